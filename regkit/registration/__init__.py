"""Registration: the 2D–3D and 3D–3D engines, their results and PNG reports."""
