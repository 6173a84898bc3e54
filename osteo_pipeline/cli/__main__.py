"""``python -m osteo_pipeline.cli``: the ``osteo`` command (how local tune workers start)."""

from osteo_pipeline.cli import app

app(prog_name="osteo")
