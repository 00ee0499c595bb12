"""What several nodes share: inputs and their checks (validation.py, flow_inputs.py, conditioning.py), the
pack's types and model folders, progress and previews. Imports no node file and nothing outside common/."""
