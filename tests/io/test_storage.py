"""The S3 pull helper against moto's in-process S3 (no server, no network)."""

import boto3
import pytest
from moto import mock_aws

from osteo_pipeline.io.storage import StorageError, pull_batch, split_uri


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="osteo-bucket")
        yield client


def test_pull_mirrors_class_folders_and_verifies(s3, tmp_path):
    s3.put_object(
        Bucket="osteo-bucket", Key="in/normal/a.jpg", Body=b"aaa", ChecksumAlgorithm="SHA256"
    )
    s3.put_object(Bucket="osteo-bucket", Key="in/osteoporosis/b.png", Body=b"bbbb")
    s3.put_object(Bucket="osteo-bucket", Key="in/README.md", Body=b"not a class")
    result = pull_batch("s3://osteo-bucket/in", tmp_path / "stage", s3)
    assert result.files == 2 and result.bytes == 7 and result.skipped == ["in/README.md"]
    assert (tmp_path / "stage" / "normal" / "a.jpg").read_bytes() == b"aaa"
    assert not list((tmp_path / "stage").rglob(".*.part"))


def test_corrupted_download_is_rejected_and_removed(s3, tmp_path, monkeypatch):
    s3.put_object(Bucket="osteo-bucket", Key="in/normal/a.jpg", Body=b"aaa")
    real = s3.download_file

    def corrupt(bucket, key, filename):
        real(bucket, key, filename)
        with open(filename, "ab") as handle:
            handle.write(b"x")

    monkeypatch.setattr(s3, "download_file", corrupt)
    with pytest.raises(StorageError, match="in/normal/a.jpg"):
        pull_batch("s3://osteo-bucket/in", tmp_path / "stage", s3)
    assert not list((tmp_path / "stage").rglob("*.jpg")) and not list(
        (tmp_path / "stage").rglob(".*")
    )


def test_bad_uri_and_empty_prefix(s3, tmp_path):
    with pytest.raises(StorageError, match="s3://"):
        split_uri("/local/path")
    with pytest.raises(StorageError, match="no <class>/<file> objects"):
        pull_batch("s3://osteo-bucket/nothing", tmp_path, s3)
