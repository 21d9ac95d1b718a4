"""Names a configuration can select, importable without torch (``retr --help`` lists them): the poolings.

`pooling.py` implements them and re-exports these sets.
"""

# The parameter-free poolings an `EncoderConfig` selects by name (pooling.py: mac, spoc, gem, rmac).
POOLINGS = frozenset({"mac", "spoc", "gem", "rmac"})

# Poolings with learnt parameters (NetVLAD's centres): they travel in a compressed model file, not by name alone.
LEARNT_POOLINGS = frozenset({"netvlad"})
