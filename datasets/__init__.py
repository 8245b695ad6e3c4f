"""Dataset converters (absl binaries) writing research/deeplab-format TFRecord shards."""
