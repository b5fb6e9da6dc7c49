"""S3 servers for tests (moto in server mode, SeaweedFS): filled in by the storage work."""
