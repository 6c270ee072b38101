//! What the AWS clients (SQS and S3) share: pointing the SDK at a local endpoint.

use aws_config::ConfigLoader;
// The SDKs re-export one credentials type; SQS's path serves S3 too.
use aws_sdk_sqs::config::Credentials;

/// Points `loader` at `endpoint` when one is set (LocalStack, MinIO). With no AWS
/// credentials in the environment, such an endpoint gets static dummy ones, since it
/// accepts any and the default chain would otherwise search (and wait on) instance
/// metadata. Without an endpoint the default chain applies, as on AWS.
pub(crate) fn at_endpoint(loader: ConfigLoader, endpoint: Option<&str>) -> ConfigLoader {
    let Some(endpoint) = endpoint else {
        return loader;
    };
    let loader = loader.endpoint_url(endpoint);
    let has_own = std::env::var_os("AWS_ACCESS_KEY_ID").is_some()
        || std::env::var_os("AWS_PROFILE").is_some();
    if has_own {
        return loader;
    }
    loader.credentials_provider(Credentials::new(
        "test",
        "test",
        None,
        None,
        "reportd-local",
    ))
}
