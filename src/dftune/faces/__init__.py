"""Face components: box geometry (pure). Detection, decoding and the crop itself live in dftune.portable."""
