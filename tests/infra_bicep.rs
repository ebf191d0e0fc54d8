//! `infra/*.bicep`, checked on the parse tree (the tree-sitter-bicep grammar): no Bicep
//! compiler can be installed here. What is checked: the files parse with no error or missing
//! node; the role assignments are exactly the expected ones (role id, scope, principal); the
//! app settings cover every setting `config::SETTINGS` marks production-required and none
//! marked test-only or host-set; the app is FC1 with runtime custom 1.0, deployed from a blob
//! container with the identity; storage has shared keys off; nothing lists keys or SAS; no
//! registry modules.

use kusto_copy::config::{Need, SETTINGS};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tree_sitter::{Node, Parser, Tree};

struct File {
    path: PathBuf,
    src: String,
    tree: Tree,
}

impl File {
    fn text(&self, n: Node) -> String {
        n.utf8_text(self.src.as_bytes()).unwrap().to_owned()
    }
}

fn infra() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("infra")
}

fn parse(path: PathBuf) -> File {
    let src = std::fs::read_to_string(&path).unwrap();
    let mut parser = Parser::new();
    parser.set_language(&tree_sitter_bicep::LANGUAGE.into()).unwrap();
    let tree = parser.parse(&src, None).unwrap();
    File { path, src, tree }
}

fn files() -> Vec<File> {
    let mut paths = vec![infra().join("main.bicep")];
    for e in std::fs::read_dir(infra().join("modules")).unwrap() {
        paths.push(e.unwrap().path());
    }
    paths.sort();
    paths.into_iter().map(parse).collect()
}

fn walk<'t>(n: Node<'t>, out: &mut Vec<Node<'t>>) {
    out.push(n);
    let mut c = n.walk();
    for child in n.children(&mut c) {
        walk(child, out);
    }
}

fn nodes<'t>(f: &'t File) -> Vec<Node<'t>> {
    let mut out = Vec::new();
    walk(f.tree.root_node(), &mut out);
    out
}

fn named<'t>(n: Node<'t>) -> Vec<Node<'t>> {
    let mut c = n.walk();
    n.named_children(&mut c).filter(|c| c.kind() != "comment").collect()
}

/// A string literal's text without quotes (interpolations kept as written).
fn unquote(f: &File, n: Node) -> String {
    let t = f.text(n);
    t.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')).map(str::to_owned).unwrap_or(t)
}

/// The value of `key` in an object node.
fn prop<'t>(f: &File, object: Node<'t>, key: &str) -> Option<Node<'t>> {
    named(object).into_iter().filter(|p| p.kind() == "object_property").find_map(|p| {
        let parts = named(p);
        let k = unquote(f, parts[0]);
        (k == key).then(|| *parts.last().unwrap())
    })
}

/// Follows a dotted path of keys through nested objects.
fn path<'t>(f: &File, object: Node<'t>, keys: &str) -> Node<'t> {
    keys.split('.').fold(object, |o, k| prop(f, o, k).unwrap_or_else(|| panic!("{}: no {keys} (at {k})", f.path.display())))
}

fn first_object(n: Node) -> Option<Node> {
    if n.kind() == "object" {
        return Some(n);
    }
    named(n).into_iter().find_map(first_object)
}

struct Resource<'t> {
    name: String,
    kind: String,
    existing: bool,
    body: Node<'t>,
}

fn resources<'t>(f: &'t File) -> Vec<Resource<'t>> {
    nodes(f)
        .into_iter()
        .filter(|n| n.kind() == "resource_declaration")
        .map(|n| {
            let parts = named(n);
            let kind = unquote(f, parts.iter().copied().find(|p| p.kind() == "string").unwrap());
            let existing = f.text(n).lines().next().unwrap().contains("' existing =");
            let body = parts.iter().skip(2).find_map(|p| first_object(*p)).unwrap();
            Resource { name: f.text(parts[0]), kind, existing, body }
        })
        .collect()
}

/// `var name = value` declarations of a file.
fn vars<'t>(f: &'t File) -> BTreeMap<String, Node<'t>> {
    nodes(f)
        .into_iter()
        .filter(|n| n.kind() == "variable_declaration")
        .map(|n| {
            let parts = named(n);
            (f.text(parts[0]), *parts.last().unwrap())
        })
        .collect()
}

/// A role definition id: `subscriptionResourceId('...roleDefinitions', X)` with X a string,
/// a var holding one, or `roles.<name>`.
fn role_id(f: &File, value: Node) -> String {
    assert_eq!(value.kind(), "call_expression", "{}", f.text(value));
    let call = f.text(value);
    assert!(call.starts_with("subscriptionResourceId('Microsoft.Authorization/roleDefinitions'"), "{call}");
    let args = named(value).into_iter().find(|n| n.kind() == "arguments").unwrap();
    let id = *named(args).last().unwrap();
    let vars = vars(f);
    match id.kind() {
        "string" => unquote(f, id),
        "identifier" => unquote(f, vars[&f.text(id)]),
        "member_expression" => {
            let text = f.text(id);
            let (object, key) = text.split_once('.').unwrap();
            unquote(f, prop(f, vars[object], key).unwrap())
        }
        other => panic!("role id as {other}: {call}"),
    }
}

fn has_error_nodes(src: &str) -> bool {
    let mut parser = Parser::new();
    parser.set_language(&tree_sitter_bicep::LANGUAGE.into()).unwrap();
    let tree = parser.parse(src, None).unwrap();
    let f = File { path: PathBuf::new(), src: src.to_owned(), tree };
    nodes(&f).into_iter().any(|n| n.is_error() || n.is_missing())
}

#[test]
fn the_error_check_catches_broken_bicep() {
    assert!(!has_error_nodes("param a string = 'x'\n"));
    assert!(has_error_nodes("resource r 'T@1' = {\n  name: 'x'\n"), "unclosed object");
    assert!(has_error_nodes("param a string = \n"), "missing value");
    // Syntax this grammar lacks, so infra/ must not use it.
    assert!(has_error_nodes("var b = {\n  ...a\n}\n"), "spread");
}

#[test]
fn every_file_parses_without_error_nodes() {
    let files = files();
    assert!(files.len() >= 3, "main.bicep and its modules");
    for f in &files {
        let bad: Vec<String> = nodes(f)
            .into_iter()
            .filter(|n| n.is_error() || n.is_missing())
            .map(|n| format!("{} at {}:{}", n.kind(), n.start_position().row + 1, n.start_position().column + 1))
            .collect();
        assert!(bad.is_empty(), "{}: {bad:?}", f.path.display());
        assert!(!f.tree.root_node().has_error(), "{}", f.path.display());
    }
}

const OWNER: &str = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b";
const BLOB_CONTRIBUTOR: &str = "ba92f5b4-2d11-453d-a403-e96b0029c9fe";
const QUEUE_CONTRIBUTOR: &str = "974c5e8b-45b9-4653-ba55-5f855dd0fb88";
const QUEUE_SENDER: &str = "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a";
const METRICS_PUBLISHER: &str = "3913510d-42f4-4e42-8a64-420c390055eb";

#[test]
fn role_assignments_are_exactly_the_least_that_work() {
    let identity = "identity.properties.principalId";
    // (file, resource) -> (role id, scope, principal, principal type)
    let expected: BTreeMap<(&str, &str), (&str, &str, &str, &str)> = [
        (("main.bicep", "hostBlobOwner"), (OWNER, "storage", identity, "'ServicePrincipal'")),
        (("main.bicep", "hostQueueContributor"), (QUEUE_CONTRIBUTOR, "storage", identity, "'ServicePrincipal'")),
        (("main.bicep", "telemetryPublisher"), (METRICS_PUBLISHER, "appInsights", identity, "'ServicePrincipal'")),
        (("main.bicep", "stagingContributor"), (BLOB_CONTRIBUTOR, "stagingAccount", identity, "'ServicePrincipal'")),
        (("main.bicep", "operatorSender"), (QUEUE_SENDER, "requestsQueue", "operatorPrincipalId", "operatorPrincipalType")),
        (("main.bicep", "operatorCheckpoints"), (BLOB_CONTRIBUTOR, "checkpointContainer", "operatorPrincipalId", "operatorPrincipalType")),
        (("main.bicep", "operatorStepsSender"), (QUEUE_SENDER, "stepsQueue", "operatorPrincipalId", "operatorPrincipalType")),
        (("staging-access.bicep", "contributor"), (BLOB_CONTRIBUTOR, "account", "principalId", "'ServicePrincipal'")),
    ]
    .into();
    let mut found = BTreeMap::new();
    for f in &files() {
        let file = f.path.file_name().unwrap().to_string_lossy().into_owned();
        for r in resources(f).into_iter().filter(|r| r.kind.starts_with("Microsoft.Authorization/roleAssignments@")) {
            let props = path(f, r.body, "properties");
            let got = (
                role_id(f, path(f, props, "roleDefinitionId")),
                f.text(path(f, r.body, "scope")),
                f.text(path(f, props, "principalId")),
                f.text(path(f, props, "principalType")),
            );
            // Idempotent names: guid() over the scope, the principal and the role.
            assert!(f.text(path(f, r.body, "name")).starts_with("guid("), "{file} {}", r.name);
            found.insert((file.clone(), r.name), got);
        }
    }
    let expected: BTreeMap<(String, String), (String, String, String, String)> = expected
        .into_iter()
        .map(|((f, n), (a, b, c, d))| ((f.to_owned(), n.to_owned()), (a.to_owned(), b.to_owned(), c.to_owned(), d.to_owned())))
        .collect();
    assert_eq!(found, expected);
}

/// Settings the host or the platform reads, not kc: allowed in Bicep beside `SETTINGS`.
const HOST_SETTINGS: &[&str] = &[
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
];

fn main_file() -> File {
    parse(infra().join("main.bicep"))
}

fn app_settings(f: &File) -> BTreeMap<String, String> {
    let app = resources(f).into_iter().find(|r| r.kind.starts_with("Microsoft.Web/sites@")).expect("a site");
    let list = path(f, app.body, "properties.siteConfig.appSettings");
    assert_eq!(list.kind(), "array");
    named(list)
        .into_iter()
        .map(|o| (unquote(f, path(f, o, "name")), f.text(path(f, o, "value"))))
        .collect()
}

#[test]
fn app_settings_are_what_config_rs_asks_for() {
    let f = main_file();
    let settings = app_settings(&f);
    for (name, need) in SETTINGS {
        match need {
            Need::Production => assert!(settings.contains_key(*name), "production setting {name} is not set"),
            Need::TestOnly | Need::Host => assert!(!settings.contains_key(*name), "{name} ({need:?}) must not be set"),
            Need::Optional => {}
        }
    }
    for name in settings.keys() {
        assert!(SETTINGS.iter().any(|(n, _)| n == name) || HOST_SETTINGS.contains(&name.as_str()), "{name} is set but not classified");
        for forbidden in ["FUNCTIONS_WORKER_RUNTIME", "WEBSITE_RUN_FROM_PACKAGE", "WEBSITE_CONTENT"] {
            assert!(!name.starts_with(forbidden), "{name}: not on Flex Consumption");
        }
    }
    assert_eq!(settings["AzureWebJobsStorage__accountName"], "storage.name");
    assert_eq!(settings["AzureWebJobsStorage__credential"], "'managedidentity'");
    assert_eq!(settings["AzureWebJobsStorage__clientId"], "identity.properties.clientId");
    assert_eq!(settings["KC_IDENTITY_CLIENT_ID"], "identity.properties.clientId");
    assert_eq!(settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"], "'ClientId=${identity.properties.clientId};Authorization=AAD'");
    assert_eq!(settings["KC_ALLOWED_CLUSTERS"], "join(clusterUris, ',')");
    assert_eq!(settings["KC_ALLOWED_STORAGE_ACCOUNTS"], "join(stagingAccountNames, ',')");
    assert_eq!(settings["KC_REPLICATIONS"], "string(replications)");
    assert_eq!(settings["KC_REPLICATIONS_VERSION"], "replicationsVersion");
    assert_eq!(settings["KC_SCHEDULE"], "schedule");
    // The scheduler's timer reads its schedule from that setting.
    let scheduler: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("functions/scheduler/function.json")).unwrap()).unwrap();
    assert_eq!(scheduler["bindings"][0]["schedule"], "%KC_SCHEDULE%");
}

#[test]
fn flex_consumption_custom_runtime_deployed_with_the_identity() {
    let f = main_file();
    let rs = resources(&f);
    let plan = rs.iter().find(|r| r.kind.starts_with("Microsoft.Web/serverfarms@")).unwrap();
    assert_eq!(f.text(path(&f, plan.body, "sku.name")), "'FC1'");
    assert_eq!(f.text(path(&f, plan.body, "sku.tier")), "'FlexConsumption'");
    assert_eq!(f.text(path(&f, plan.body, "properties.reserved")), "true");
    let app = rs.iter().find(|r| r.kind.starts_with("Microsoft.Web/sites@")).unwrap();
    assert_eq!(f.text(path(&f, app.body, "kind")), "'functionapp,linux'");
    assert_eq!(f.text(path(&f, app.body, "properties.serverFarmId")), format!("{}.id", plan.name));
    assert_eq!(f.text(path(&f, app.body, "properties.httpsOnly")), "true");
    assert_eq!(f.text(path(&f, app.body, "identity.type")), "'UserAssigned'");
    let config = path(&f, app.body, "properties.functionAppConfig");
    assert_eq!(f.text(path(&f, config, "runtime.name")), "'custom'");
    assert_eq!(f.text(path(&f, config, "runtime.version")), "'1.0'");
    assert_eq!(f.text(path(&f, config, "deployment.storage.type")), "'blobContainer'");
    assert_eq!(f.text(path(&f, config, "deployment.storage.authentication.type")), "'UserAssignedIdentity'");
    assert_eq!(f.text(path(&f, config, "deployment.storage.authentication.userAssignedIdentityResourceId")), "identity.id");

    // Every storage account Bicep creates refuses shared keys.
    let accounts: Vec<&Resource> = rs.iter().filter(|r| r.kind.starts_with("Microsoft.Storage/storageAccounts@") && !r.existing).collect();
    assert_eq!(accounts.len(), 2, "host storage and the optional staging account");
    for a in accounts {
        assert_eq!(f.text(path(&f, a.body, "properties.allowSharedKeyAccess")), "false", "{}", a.name);
        assert_eq!(f.text(path(&f, a.body, "properties.allowBlobPublicAccess")), "false", "{}", a.name);
        assert_eq!(f.text(path(&f, a.body, "properties.minimumTlsVersion")), "'TLS1_2'", "{}", a.name);
    }
    let insights = rs.iter().find(|r| r.kind.starts_with("Microsoft.Insights/components@")).unwrap();
    assert_eq!(f.text(path(&f, insights.body, "properties.DisableLocalAuth")), "true");
    assert_eq!(f.text(path(&f, insights.body, "properties.WorkspaceResourceId")), "logAnalytics.id");

    // The four queues, created up front.
    let queues: BTreeSet<String> = named(vars(&f)["queueNames"]).into_iter().map(|n| unquote(&f, n)).collect();
    assert_eq!(queues, ["kc-requests", "kc-requests-poison", "kc-steps", "kc-steps-poison"].map(String::from).into());
}

#[test]
fn adx_principals_use_the_client_id_as_an_app() {
    let f = parse(infra().join("modules/adx-principal.bicep"));
    let r = resources(&f).into_iter().find(|r| r.kind.starts_with("Microsoft.Kusto/clusters/databases/principalAssignments@")).unwrap();
    assert_eq!(f.text(path(&f, r.body, "properties.principalId")), "clientId");
    assert_eq!(f.text(path(&f, r.body, "properties.principalType")), "'App'");
    assert_eq!(f.text(path(&f, r.body, "properties.tenantId")), "tenant().tenantId");
}

#[test]
fn no_keys_no_sas_listing_no_registry_modules() {
    for f in &files() {
        for n in nodes(f) {
            match n.kind() {
                "string" | "string_content" => {
                    let t = f.text(n);
                    for bad in ["AccountKey=", "SharedAccessKey", "SharedAccessSignature", "sig="] {
                        assert!(!t.contains(bad), "{}: {t}", f.path.display());
                    }
                }
                "call_expression" => {
                    let callee = f.text(named(n)[0]);
                    for bad in ["listKeys", "listAccountSas", "listServiceSas"] {
                        assert!(!callee.ends_with(bad), "{}: {callee}(…)", f.path.display());
                    }
                }
                "module_declaration" => {
                    let source = unquote(f, named(n).into_iter().find(|p| p.kind() == "string").unwrap());
                    assert!(!source.starts_with("br/") && !source.starts_with("br:") && !source.starts_with("ts"), "{source}");
                    assert!(f.path.parent().unwrap().join(&source).is_file(), "module {source} exists");
                }
                _ => {}
            }
        }
    }
}
