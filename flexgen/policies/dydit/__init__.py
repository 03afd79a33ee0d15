"""DyDiT (Zhao et al. 2024, arXiv 2410.03456): timestep-wise width (heads and MLP groups from the timestep embedding)
and spatial-wise token routing (which tokens run a block's MLP). Routers, the budget, the width machinery that holds
for any block, what a routed forward records and what is computed from it (losses, MACs from the kept counts)."""
