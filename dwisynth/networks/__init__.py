"""Networks: one module per network; shared blocks in `blocks`, losses in `losses`.

Networks never read files. Every image tensor is (N, C, H, W) on the network
intensity scale [-1, 1] (see `blocks.to_network` / `blocks.from_network`).
"""
