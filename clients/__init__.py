"""gamjeong.clients: generated gRPC stubs (v1/) and friendly Python clients."""
