"""tokenbench.datasets — decoding, clip sampling, manifests, bundled real clips, synthetic benchmark."""
