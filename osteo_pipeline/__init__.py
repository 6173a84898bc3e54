"""osteo-pipeline: validate, train, register and serve a knee X-ray osteoporosis classifier."""

import sys
from importlib.util import find_spec

# With PySpark installed (the `spark` extra), importing its Spark Connect client in a `python -c`
# process exits that process with status 0 (pyspark.sql.connect.utils takes it for a doctest
# run), and Great Expectations imports that client whenever PySpark is there: a tune worker
# started as `python -c` ended silently. The pipeline never uses Spark Connect (the Spark engine
# runs classic PySpark), so it is marked unavailable, which Great Expectations expects.
if "pyspark.sql.connect" not in sys.modules and find_spec("pyspark") is not None:
    sys.modules["pyspark.sql.connect"] = None  # type: ignore[assignment]
