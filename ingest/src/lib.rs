//! lambda-ingest
