"""The web console for reviewers and staff: HTTPS beside the gRPC server, same certificates."""
