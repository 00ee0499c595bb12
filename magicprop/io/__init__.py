"""Reading and writing: videos and frame folders (video.py), still images (images.py), atomic writes and model
folders (fileio.py)."""
