"""Code that runs inside the GPU container. Never imports Prefect."""
