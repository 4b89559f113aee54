# diffusion-course: every target sets up what it needs (a .venv with the package, the
# course extras and a registered Jupyter kernel) the first time it runs.

SHELL      := /bin/bash
PYTHON     ?= python3
VENV       ?= .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.diffusion-course-installed
# JupyterLab refuses to start as root without this flag (containers, hosted notebooks).
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
LAB_ARGS   ?=
PYTEST_ARGS ?=
# two test processes; a test file (a notebook's cells too) or a test class stays in one; XDIST= runs one
XDIST      ?= -n 2 --dist loadscope
# one thread per process (and per notebook kernel): two processes of two threads each would
# oversubscribe two cores, and tiny models spin in OpenMP (a notebook took 10x longer that way)
TEST_THREADS ?= 1
INSTRUCTOR_PLUGINS := @jupyter/nbgrader:formgrader @jupyter/nbgrader:create-assignment @jupyter/nbgrader:course-list

.PHONY: help setup lab instructor test data notebooks strip lint clean gpu-check

help:
	@echo "make lab         open the course (JupyterLab on notebooks/), setting everything up first"
	@echo "make test        run the whole test suite (unit tests, notebooks, grading round trip)"
	@echo "make instructor  JupyterLab on the whole repository with nbgrader's instructor tools on"
	@echo "make notebooks   regenerate the student notebooks/ from solutions/"
	@echo "make strip       remove outputs and widget state from solutions/"
	@echo "make lint        ruff"
	@echo "make gpu-check   on a CUDA machine: GPU tests, notebooks 03/05's GPU sections, images/s and MFU"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[course,dev]"
	$(BIN)/python -m ipykernel install --user --name diffusion-course \
		--display-name "Python (diffusion-course)" >/dev/null
	@touch $@

setup: $(STAMP)

# A missing dataset is reported (with the fixes) but does not stop the lab from opening.
data: setup
	-@$(BIN)/python -m diffusion_course.data prepare

lab: setup data
	@$(BIN)/jupyter labextension disable --level=sys_prefix $(INSTRUCTOR_PLUGINS) >/dev/null 2>&1
	@$(BIN)/jupyter labextension lock --level=sys_prefix $(INSTRUCTOR_PLUGINS) >/dev/null 2>&1
	$(BIN)/jupyter lab --ServerApp.root_dir=notebooks $(ALLOW_ROOT) $(LAB_ARGS)

instructor: setup data
	@$(BIN)/jupyter labextension unlock --level=sys_prefix $(INSTRUCTOR_PLUGINS) >/dev/null 2>&1
	@$(BIN)/jupyter labextension enable --level=sys_prefix $(INSTRUCTOR_PLUGINS) >/dev/null 2>&1
	$(BIN)/jupyter lab $(ALLOW_ROOT) $(LAB_ARGS)

test: setup
	DIFFUSION_COURSE_FAST=1 MPLBACKEND=Agg OMP_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest tests solutions \
		--nbval-lax --nbval-current-env $(XDIST) $(PYTEST_ARGS)

notebooks: setup
	$(BIN)/python -m diffusion_course.grading generate

strip: setup
	$(BIN)/python -m diffusion_course.grading strip

lint: setup
	$(BIN)/ruff check diffusion_course tests benchmarks

# Needs no set-up, so that it runs on a GPU machine without network: the .venv's python if
# there is one, else python3 with the repository on PYTHONPATH. Example:
#   make gpu-check GPU_CHECK_ARGS="--cifar-archive .gpu/cifar10-jpg.tar.gz --out runs/gpu_check"
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $$( [ -x $(BIN)/python ] && echo $(BIN)/python || echo $(PYTHON) ) \
		benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf .grading .pytest_cache .ruff_cache
