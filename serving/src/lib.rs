//! lambda-serving
