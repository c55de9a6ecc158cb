"""Plain nn.Module models: Neuroformer, BaRISTA and decoding heads (no Lightning here)."""
