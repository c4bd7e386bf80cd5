"""What every part of training shares: storage (local or s3://), paths, console output, errors, the local Ray environment."""
