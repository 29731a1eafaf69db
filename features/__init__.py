"""Pure feature extractors: bytes or text in, vectors out.

Nothing in this package imports pyspark or touches a table; jobs/ maps these functions over
partitions. That keeps every extractor testable on a file a test writes, without a cluster.
"""
