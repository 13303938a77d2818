//! The lake (object storage by URL): `lambda_lake::store`, re-exported.

pub use lambda_lake::store::{Created, Lake, LakeWriter};
