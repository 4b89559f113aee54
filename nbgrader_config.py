"""nbgrader configuration for the course.

solutions/<NN_phase>/  is the nbgrader *source*: complete notebooks with solutions.
notebooks/<NN_phase>/  is the *release*: generated student notebooks (`make notebooks`).
Everything an instructor's grading run writes (submissions, autograded copies, the
gradebook) goes under .grading/, which git ignores.
"""

c = get_config()  # noqa: F821  (injected by nbgrader/traitlets when it loads this file)

c.CourseDirectory.course_id = "diffusion-course"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"
c.CourseDirectory.submitted_directory = ".grading/submitted"
c.CourseDirectory.autograded_directory = ".grading/autograded"
c.CourseDirectory.feedback_directory = ".grading/feedback"
c.CourseDirectory.solution_directory = ".grading/solution"
c.CourseDirectory.db_url = "sqlite:///.grading/gradebook.db"

# Only the notebook itself is released; data comes from the package's loaders.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.png", "runs"]

# Notebooks run in fast mode under nbgrader (it sets NBGRADER_EXECUTION); a generous
# per-cell limit still protects against a learner's infinite loop.
c.Execute.timeout = 300
c.ExecutePreprocessor.kernel_name = "python3"

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
