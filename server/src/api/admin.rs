//! `tuna.v1.AdminService`: API keys. The edge lets only admin callers in.

use tonic::{Request, Response, Status};
use tuna_proto::ts_from_ms;
use tuna_proto::v1 as pb;
use tuna_proto::v1::admin_service_server::AdminService;

use super::{ApiContext, caller};
use crate::domain::access::{self, Role};
use crate::error::ApiError;
use crate::store::ApiKeyRecord;

/// Most keys one listing returns (newest first).
const MAX_LISTED_KEYS: usize = 1000;

/// The admin service.
pub struct Admin {
    ctx: ApiContext,
}

impl Admin {
    pub fn new(ctx: ApiContext) -> Self {
        Self { ctx }
    }
}

fn role_from(field: &str, v: i32) -> Result<Role, ApiError> {
    match pb::ApiKeyRole::try_from(v) {
        Ok(pb::ApiKeyRole::Client) => Ok(Role::Client),
        Ok(pb::ApiKeyRole::Admin) => Ok(Role::Admin),
        Ok(pb::ApiKeyRole::Worker) => Ok(Role::Worker),
        Ok(pb::ApiKeyRole::Unspecified) | Err(_) => Err(ApiError::field(
            field,
            "must be API_KEY_ROLE_CLIENT, API_KEY_ROLE_ADMIN or API_KEY_ROLE_WORKER",
        )),
    }
}

fn role_proto(r: Role) -> pb::ApiKeyRole {
    match r {
        Role::Client => pb::ApiKeyRole::Client,
        Role::Admin => pb::ApiKeyRole::Admin,
        Role::Worker => pb::ApiKeyRole::Worker,
    }
}

fn key_proto(k: &ApiKeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id.clone(),
        tenant: k.tenant.clone(),
        role: role_proto(k.role) as i32,
        name: k.name.clone(),
        created_at: Some(ts_from_ms(k.created_at)),
        revoked_at: k.revoked_at.map(ts_from_ms),
    }
}

fn require_tenant(field: &str, tenant: &str) -> Result<(), ApiError> {
    if access::tenant_is_valid(tenant) {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            "must be 1..=64 characters of [A-Za-z0-9._-], starting with a letter or digit",
        ))
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant))]
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let by = caller(&request)?;
        let req = request.into_inner();
        require_tenant("tenant", &req.tenant)?;
        let role = role_from("role", req.role)?;
        if req.name.len() > 128 || req.name.chars().any(char::is_control) {
            return Err(ApiError::field(
                "name",
                "must be at most 128 characters without control characters",
            )
            .into());
        }
        let new = access::generate_key();
        let record = ApiKeyRecord {
            id: new.id,
            tenant: req.tenant,
            role,
            name: req.name,
            secret_sha256: new.secret_sha256,
            created_at: self.ctx.store.clock().now_ms(),
            revoked_at: None,
        };
        self.ctx.store.insert_api_key(&record).await?;
        tracing::info!(key = %record.id, role = %record.role, by = %by.key_id, "API key created");
        Ok(Response::new(pb::CreateApiKeyResponse {
            key: Some(key_proto(&record)),
            secret: new.text,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let req = request.into_inner();
        let tenant = (!req.tenant.is_empty()).then_some(req.tenant.as_str());
        if let Some(t) = tenant {
            require_tenant("tenant", t)?;
        }
        let keys = self.ctx.store.list_api_keys(tenant).await?;
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: keys.iter().take(MAX_LISTED_KEYS).map(key_proto).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(key = %request.get_ref().id))]
    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let by = caller(&request)?;
        let id = request.into_inner().id;
        if !access::key_id_is_valid(&id) {
            return Err(ApiError::field(
                "id",
                format!("{id:?} is not a key id (key followed by 16 hex digits)"),
            )
            .into());
        }
        let key = self.ctx.store.revoke_api_key(&id).await?;
        tracing::info!(by = %by.key_id, "API key revoked");
        Ok(Response::new(key_proto(&key)))
    }
}
