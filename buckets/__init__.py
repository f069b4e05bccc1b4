"""The bucket side of a repository: its rules, the sync planner and the rows it reads, the S3
clients, the wiring of its notifications, the file attributes kept in object metadata, and its
ownership."""
