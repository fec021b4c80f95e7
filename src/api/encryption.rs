//! `/v1-bramble/secrets-encrypt/{status,rotate,reencrypt}`: the encryption keys of Secrets at
//! rest, for `bramble secrets-encrypt` (k3s's verbs). Only `system:masters` may use them.

use serde_json::{Value, json};

use super::Api;
use super::auth::User;
use super::status::ApiError;

impl Api {
    /// Answers one `secrets-encrypt` verb: `GET status`, `POST rotate`, `POST reencrypt`.
    pub(super) async fn secrets_encrypt(&self, user: &User, verb: &str, method: &str) -> Result<Value, ApiError> {
        if !user.is_admin() {
            return Err(ApiError::forbidden(format!(
                "User \"{}\" cannot manage the encryption keys: only system:masters may",
                user.name
            )));
        }
        let status = |s: crate::store::crypt::KeyStatus, rewritten: Option<usize>| {
            let mut v = json!({"currentKey": s.current, "oldKeys": s.old});
            if let Some(n) = rewritten {
                v["reencrypted"] = json!(n);
            }
            v
        };
        match (verb, method) {
            ("status", "GET") => Ok(status(self.store.encryption_status(), None)),
            ("rotate", "POST") => Ok(status(self.store.rotate_encryption_key()?, None)),
            ("reencrypt", "POST") => {
                let n = self.store.reencrypt().await?;
                tracing::info!(secrets = n, "re-encrypted with the current key");
                Ok(status(self.store.encryption_status(), Some(n)))
            }
            _ => Err(ApiError::not_found_path(&format!("/v1-bramble/secrets-encrypt/{verb} ({method})"))),
        }
    }
}
