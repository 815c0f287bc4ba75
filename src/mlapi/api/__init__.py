"""HTTP routes: health, the V2 data plane, the V1 predict route, the repository
extension, and the OpenAPI document."""
