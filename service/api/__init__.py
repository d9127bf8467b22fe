"""The gRPC edge: servicers, error mapping and server assembly. The only layer that knows grpc."""
