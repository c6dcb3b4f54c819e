"""Drives the running stand-ins with Microsoft's own Python SDKs (azure-identity, MSAL,
azure-keyvault-secrets, msgraph-sdk) and prints one JSON line per operation: what the SDK
returned or raised. tests/microsoft_sdks.rs starts the stand-ins, runs this script and
asserts every line; the script itself judges nothing.

Configuration comes from the environment (STANDIN_*); the stand-ins' CA from
REQUESTS_CA_BUNDLE / SSL_CERT_FILE. No secret value is ever printed.
"""

import asyncio
import datetime
import json
import os
import ssl
import traceback
import uuid

ENV = os.environ
AUTHORITY = ENV["STANDIN_AUTHORITY"].rstrip("/")
TENANT_ID = ENV["STANDIN_TENANT_ID"]
TENANT_DOMAIN = ENV["STANDIN_TENANT_DOMAIN"]
CLIENT_ID = ENV["STANDIN_CLIENT_ID"]
CLIENT_SECRET = ENV["STANDIN_CLIENT_SECRET"]
VAULT_URL = ENV["STANDIN_VAULT_URL"]
GRAPH_URL = ENV["STANDIN_GRAPH_URL"].rstrip("/")
OWNED_APP = ENV["STANDIN_OWNED_APP_OBJECT_ID"]
OWNED_APP_ID = ENV["STANDIN_OWNED_APP_ID"]
FOREIGN_APP = ENV["STANDIN_FOREIGN_APP_OBJECT_ID"]
CA = ENV["SSL_CERT_FILE"]
GRAPH_SCOPE = "https://graph.microsoft.com/.default"


def emit(op, **fields):
    print(json.dumps({"op": op, **fields}, default=str), flush=True)


def failure(error):
    """What an exception says, as a user of the SDK would see it."""
    return {"ok": False, "error_type": type(error).__name__, "error": str(error)}


def step(op, action):
    try:
        emit(op, ok=True, **(action() or {}))
    except Exception as error:  # noqa: BLE001 - every failure is reported to the Rust test
        emit(op, **failure(error), trace=traceback.format_exc(limit=3))


async def astep(op, action):
    try:
        emit(op, ok=True, **(await action() or {}))
    except Exception as error:  # noqa: BLE001
        emit(op, **failure(error), trace=traceback.format_exc(limit=3))


def credential(secret=CLIENT_SECRET):
    from azure.identity import ClientSecretCredential

    # The tenant is named by its verified domain; Key Vault's challenge names it by id,
    # which the credential is allowed to follow. Instance discovery always asks
    # login.microsoftonline.com (MSAL's hard-coded world-wide host), which is not
    # reachable here; MSAL is pointed at the stand-in's discovery below instead.
    return ClientSecretCredential(
        TENANT_DOMAIN,
        CLIENT_ID,
        secret,
        authority=AUTHORITY,
        disable_instance_discovery=True,
        additionally_allowed_tenants=[TENANT_ID],
    )


def msal_with_instance_discovery():
    import msal

    app = msal.ConfidentialClientApplication(
        CLIENT_ID,
        client_credential=CLIENT_SECRET,
        authority=f"{AUTHORITY}/{TENANT_DOMAIN}",
        instance_discovery=f"{AUTHORITY}/common/discovery/instance",
    )
    result = app.acquire_token_for_client(scopes=[GRAPH_SCOPE])
    return {
        "token_type": result.get("token_type"),
        "has_access_token": bool(result.get("access_token")),
        "error": result.get("error"),
        "token_endpoint": app.authority.token_endpoint,
    }


def identity_token():
    token = credential().get_token(GRAPH_SCOPE)
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    return {"has_token": bool(token.token), "expires_in": int(token.expires_on - now)}


def identity_bad_secret():
    # Raises ClientAuthenticationError, reported by step() with the SDK's message.
    credential("not-the-secret").get_token(GRAPH_SCOPE)


def key_vault():
    from azure.keyvault.secrets import SecretClient

    # verify_challenge_resource=False: the challenge names https://vault.azure.net, and the
    # stand-in vault's host (127.0.0.1) is not under that domain.
    client = SecretClient(VAULT_URL, credential(), verify_challenge_resource=False)
    name = "sdk-" + uuid.uuid4().hex[:8]
    first_value, second_value = "first-" + uuid.uuid4().hex, "second-" + uuid.uuid4().hex

    def set_first():
        secret = client.set_secret(name, first_value, content_type="text/plain", tags={"keyId": "k1"})
        state["first"] = secret.properties.version
        return {"name": secret.name, "version": secret.properties.version, "tags": secret.properties.tags,
                "content_type": secret.properties.content_type}

    def set_second():
        secret = client.set_secret(name, second_value)
        state["second"] = secret.properties.version
        client.set_secret(name + "-other", "other-" + uuid.uuid4().hex)
        return {"version": secret.properties.version}

    def get_latest():
        secret = client.get_secret(name)
        return {"version": secret.properties.version, "value_matches": secret.value == second_value}

    def get_first():
        secret = client.get_secret(name, state["first"])
        return {"version": secret.properties.version, "value_matches": secret.value == first_value}

    def list_secrets():
        pages = client.list_properties_of_secrets(max_page_size=1).by_page()
        sizes, names = [], []
        for page in pages:
            items = list(page)
            sizes.append(len(items))
            names.extend(item.name for item in items)
        return {"page_sizes": sizes, "names": names}

    def list_versions():
        pages = client.list_properties_of_secret_versions(name, max_page_size=1).by_page()
        sizes, versions = [], []
        for page in pages:
            items = list(page)
            sizes.append(len(items))
            versions.extend(item.version for item in items)
        return {"page_sizes": sizes, "versions": versions}

    def update():
        props = client.update_secret_properties(name, state["first"], enabled=False, tags={"keyId": "k1", "retired": "yes"})
        return {"version": props.version, "enabled": props.enabled, "tags": props.tags}

    def delete():
        deleted = client.begin_delete_secret(name).result()
        return {"name": deleted.name, "has_recovery_id": bool(deleted.recovery_id),
                "has_deleted_date": deleted.deleted_date is not None}

    def get_after_delete():
        client.get_secret(name)

    def refused_api_version():
        SecretClient(VAULT_URL, credential(), verify_challenge_resource=False, api_version="2015-06-01").get_secret(name)

    state = {}
    step("keyvault_set", set_first)
    step("keyvault_set_second_version", set_second)
    step("keyvault_get_latest", get_latest)
    step("keyvault_get_version", get_first)
    step("keyvault_list_secrets", list_secrets)
    step("keyvault_list_versions", list_versions)
    step("keyvault_update", update)
    step("keyvault_delete", delete)
    step("keyvault_get_deleted_name", get_after_delete)
    step("keyvault_unknown_api_version", refused_api_version)
    emit("keyvault_client", api_version=client.api_version)


async def graph():
    import httpx
    from kiota_authentication_azure.azure_identity_authentication_provider import (
        AzureIdentityAuthenticationProvider,
    )
    from msgraph import GraphRequestAdapter, GraphServiceClient
    from msgraph.generated.applications.applications_request_builder import ApplicationsRequestBuilder
    from msgraph.generated.applications.item.add_password.add_password_post_request_body import (
        AddPasswordPostRequestBody,
    )
    from msgraph.generated.applications.item.application_item_request_builder import (
        ApplicationItemRequestBuilder,
    )
    from msgraph.generated.applications.item.remove_password.remove_password_post_request_body import (
        RemovePasswordPostRequestBody,
    )
    from msgraph.generated.models.password_credential import PasswordCredential
    from msgraph_core import GraphClientFactory
    from kiota_abstractions.base_request_configuration import RequestConfiguration

    host = httpx.URL(GRAPH_URL).host
    auth = AzureIdentityAuthenticationProvider(credential(), scopes=[GRAPH_SCOPE], allowed_hosts=[host])
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(verify=ssl.create_default_context(cafile=CA))
    )
    adapter = GraphRequestAdapter(auth, client=http)
    adapter.base_url = f"{GRAPH_URL}/v1.0"
    client = GraphServiceClient(request_adapter=adapter)
    state = {}

    async def get_application():
        query = ApplicationItemRequestBuilder.ApplicationItemRequestBuilderGetQueryParameters(
            select=["id", "appId", "displayName", "passwordCredentials", "keyCredentials"]
        )
        app = await client.applications.by_application_id(OWNED_APP).get(
            request_configuration=RequestConfiguration(query_parameters=query)
        )
        return {"id": app.id, "app_id": app.app_id, "display_name": app.display_name,
                "password_key_ids": [str(p.key_id) for p in app.password_credentials or []],
                "key_credentials": len(app.key_credentials or [])}

    async def filter_by_app_id():
        query = ApplicationsRequestBuilder.ApplicationsRequestBuilderGetQueryParameters(
            filter=f"appId eq '{OWNED_APP_ID}'", select=["id", "appId"]
        )
        page = await client.applications.get(request_configuration=RequestConfiguration(query_parameters=query))
        return {"ids": [a.id for a in page.value or []]}

    async def add_password():
        end = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)
        body = AddPasswordPostRequestBody(password_credential=PasswordCredential(display_name="msgraph-sdk", end_date_time=end))
        created = await client.applications.by_application_id(OWNED_APP).add_password.post(body)
        state["key_id"] = created.key_id
        return {"key_id": str(created.key_id), "display_name": created.display_name,
                "has_secret_text": bool(created.secret_text), "hint_len": len(created.hint or "")}

    async def remove_password():
        body = RemovePasswordPostRequestBody(key_id=state["key_id"])
        await client.applications.by_application_id(OWNED_APP).remove_password.post(body)
        return {"key_id": str(state["key_id"])}

    async def foreign_add_password():
        body = AddPasswordPostRequestBody(password_credential=PasswordCredential(display_name="msgraph-sdk"))
        await client.applications.by_application_id(FOREIGN_APP).add_password.post(body)

    await astep("graph_get_application", get_application)
    await astep("graph_filter_by_app_id", filter_by_app_id)
    await astep("graph_add_password", add_password)
    await astep("graph_remove_password", remove_password)
    await astep("graph_add_password_not_owned", foreign_add_password)


def main():
    step("msal_instance_discovery", msal_with_instance_discovery)
    step("identity_token", identity_token)
    step("identity_bad_secret", identity_bad_secret)
    key_vault()
    asyncio.run(graph())
    emit("done")


if __name__ == "__main__":
    main()
