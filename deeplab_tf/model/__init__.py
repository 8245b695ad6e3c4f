"""DeepLab models: encoders, ASPP, decoder and the full model builder."""
