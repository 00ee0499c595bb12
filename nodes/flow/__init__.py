"""The flow propagation nodes: OpticalFlowSequence and FlowPropagate."""
