"""The model pack: the manifest that describes every model, and the build that produces them."""
