"""Container images into an unpacked CVMFS repository, DUCC layout (plain Python, no Prefect).

`registry` reads images, `layers` applies them, `layout`/`apptainer` shape the tree, `unpacker`
publishes; `wishlist` reads DUCC recipes.
"""
