//! An S3 server for the S3 storage tests: s3s-fs, started by `berth-storage`'s test helper.
use super::require_tool;

/// An s3s-fs server with one empty bucket, or None (skip) when s3s-fs is not installed
/// outside CI; with `CI=true` a missing s3s-fs fails the test.
pub fn s3_server(bucket: &str) -> Option<berth_storage::s3_test_server::S3TestServer> {
    match berth_storage::s3_test_server::S3TestServer::start(bucket) {
        Ok(Some(server)) => Some(server),
        Ok(None) => {
            require_tool("s3s-fs");
            None
        }
        Err(e) => panic!("cannot start s3s-fs: {e}"),
    }
}
