"""Motion: optical flow estimated once (engine.py) and used by every propagation path (propagate.py).

Import the submodules directly (`from magicprop.motion.engine import FlowEngine`); nothing heavy is imported here.
"""
