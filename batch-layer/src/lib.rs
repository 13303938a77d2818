//! lambda-batch
