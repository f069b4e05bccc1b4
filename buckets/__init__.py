"""The bucket side of a repository: whether its bucket exists, whose it is, and what to tell
its owner. (bucket_sync, bucket_wiring, object_metadata and s3_clients belong here too.)"""
