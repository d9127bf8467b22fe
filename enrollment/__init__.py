"""The enrolment and kiosk command-line client: a gRPC client of the faceguard service."""
