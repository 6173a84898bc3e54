"""The Great Expectations suites (JSON), edited here and shipped as ``osteo_pipeline.expectations``."""
