"""The protocol-neutral data plane: what every front (HTTP in ``api/``, gRPC in
``rpc/``) shares. The request context and its key check, admission and limits,
the decode lane, the tensor checks and binary tensors, model metadata, the
repository operations, per-request tracking, and one ``infer()`` that runs a
request's whole life. A front turns its wire format into the plane's request and
the plane's result (or error) back; fronts never import each other."""
