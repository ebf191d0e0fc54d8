// kusto-copy on Azure Functions: a Flex Consumption (FC1) Linux app running the `kc` custom
// handler, one user-assigned identity for everything, no keys anywhere.
//
// Sources for types, API versions and properties (read, not deployed: nothing here could be
// deployed from the machines this was written on; where Azure disagrees, Azure wins):
//   - Azure/azure-quickstart-templates quickstarts/microsoft.web/function-app-flex-managed-identities/main.bicep
//     (serverfarms FC1 @2024-04-01, sites functionAppConfig @2024-04-01, storage @2023-05-01,
//     identity @2023-01-31, workspaces @2023-09-01, components @2020-02-02, roleAssignments @2022-04-01)
//   - learn.microsoft.com/azure/templates/microsoft.kusto/clusters/databases/principalassignments (@2023-08-15)
//   - Functions stacks data: runtime `custom` version `1.0` on FC1 (shared/reference/deploy.md)
// Built-in role ids: learn.microsoft.com/azure/role-based-access-control/built-in-roles, as
// used in the quickstart above.
//
// Deploy: az deployment group create -g RG -f infra/main.bicep -p @infra/main.parameters.json

@description('Region of every resource.')
param location string = resourceGroup().location

@description('Short token that makes resource names unique; the default is stable per resource group.')
@minLength(3)
@maxLength(11)
param resourceToken string = toLower(take(uniqueString(subscription().id, resourceGroup().id), 11))

@description('Most instances the app scales to (Flex Consumption: 40 to 1000). Each steps instance runs batchSize + newBatchThreshold steps at once (host.json).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each instance, in MB.')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

@description('Create a staging account for exports (kc-staging...).')
param createStagingAccount bool = true

@description('Existing staging accounts: [{ "name": "...", "resourceGroup": "..." }]. The identity gets Storage Blob Data Contributor on each, at account scope.')
param existingStagingAccounts array = []

@description('Kusto cluster URIs kc may reach (ADX and Fabric Eventhouse), e.g. https://mycluster.westeurope.kusto.windows.net. Fills KC_ALLOWED_CLUSTERS.')
param clusterUris array = []

@description('ADX databases Bicep grants the identity on: [{ "clusterName", "resourceGroup", "database", "role" }], role one of Admin, Ingestor, Monitor, UnrestrictedViewer, User, Viewer. Source databases: Viewer; destination databases: Admin (staging tables, .move extents).')
param adxDatabases array = []

@description('Databases Bicep cannot reach (Fabric Eventhouse): [{ "database", "role" }], role one of admins, ingestors, viewers. The outputs give the .add lines to run there.')
param fabricDatabases array = []

@description('Object id of a person or group who runs kc submit / kc status; empty for none.')
param operatorPrincipalId string = ''

@description('Type of operatorPrincipalId.')
@allowed(['User', 'Group', 'ServicePrincipal'])
param operatorPrincipalType string = 'User'

@description('Replications declared in configuration (KC_REPLICATIONS): each a copy request as on kc-requests, plus a name.')
param replications array = []

@description('Version of the replications declaration (KC_REPLICATIONS_VERSION): the deployment time by default, so instances still on older settings change nothing. Leave the default.')
param replicationsVersion string = utcNow('yyyyMMddHHmmss')

@description('NCRONTAB schedule of the scheduler function (six fields, seconds first): KC_SCHEDULE.')
param schedule string = '0 */1 * * * *'

// Built-in role definition ids.
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageQueueDataMessageSender: 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

var appName = 'kc-${resourceToken}'
var packageContainerName = 'app-package'
var checkpointContainerName = 'kc-checkpoints'
// Created up front so a first message never races the host creating them.
var queueNames = ['kc-requests', 'kc-requests-poison', 'kc-steps', 'kc-steps-poison']
var newStagingNames = createStagingAccount ? ['kcstg${resourceToken}'] : []
var existingStagingNames = [for s in existingStagingAccounts: s.name]
var stagingAccountNames = concat(newStagingNames, existingStagingNames)

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-${appName}'
  location: location
}

// Host storage: the host's own state, checkpoints, queues and the deployment package.
resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'kc${resourceToken}'
  location: location
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource packageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: packageContainerName
  properties: { publicAccess: 'None' }
}

resource checkpointContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: checkpointContainerName
  properties: { publicAccess: 'None' }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for q in queueNames: {
  parent: queueService
  name: q
}]

resource stagingAccount 'Microsoft.Storage/storageAccounts@2023-05-01' = if (createStagingAccount) {
  name: 'kcstg${resourceToken}'
  location: location
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
}

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${appName}'
  location: location
  properties: {
    retentionInDays: 30
    sku: { name: 'PerGB2018' }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${appName}'
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    // Only Entra-authenticated telemetry (the identity, below).
    DisableLocalAuth: true
  }
}

// The host: blob leases, keys, timer locks and the package, plus kc's checkpoints. The
// Functions docs ask for Owner on the host account (quickstart above).
resource hostBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, storage.id, identity.id, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Queue triggers and output bindings on kc-requests and kc-steps, the handler's own delayed
// step messages, and moving failed messages to the -poison queues.
resource hostQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, storage.id, identity.id, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Telemetry to Application Insights with local auth off.
resource telemetryPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, appInsights.id, identity.id, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The new staging account: the engine creates a container per block attempt, asks for user
// delegation keys (included in this role at account scope) and deletes staged blobs.
resource stagingContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (createStagingAccount) {
  name: guid(subscription().id, resourceGroup().id, 'kcstg${resourceToken}', identity.id, roles.storageBlobDataContributor)
  scope: stagingAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Existing staging accounts, in their own resource groups: the same role, account scope.
module existingStaging 'modules/staging-access.bicep' = [for s in existingStagingAccounts: {
  name: 'kc-staging-${s.name}'
  scope: resourceGroup(s.resourceGroup)
  params: {
    accountName: s.name
    principalId: identity.properties.principalId
  }
}]

resource requestsQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  parent: queueService
  name: 'kc-requests'
}

// The operator drops job requests on kc-requests (kc submit, az storage message put).
resource operatorSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(subscription().id, storage.id, operatorPrincipalId, roles.storageQueueDataMessageSender)
  scope: requestsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataMessageSender)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
  dependsOn: [queues]
}

// The operator reads job progress from the checkpoints (kc status) and writes the cancel
// flag there (kc cancel marks each activity cancelled): read and write, on this container only.
resource operatorCheckpoints 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(subscription().id, storage.id, operatorPrincipalId, roles.storageBlobDataContributor)
  scope: checkpointContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
}

resource stepsQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' existing = {
  parent: queueService
  name: 'kc-steps'
}

// kc cancel puts the cleanup step of each cancelled activity on kc-steps, for the app to run
// under its own identity (the scheduler's sweeper would send it too, a tick later).
resource operatorStepsSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(subscription().id, storage.id, operatorPrincipalId, roles.storageQueueDataMessageSender, 'kc-steps')
  scope: stepsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataMessageSender)
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
  }
  dependsOn: [queues]
}

// ADX databases in reach: the identity as a Kusto principal (principalId is its client id).
module adxPrincipals 'modules/adx-principal.bicep' = [for d in adxDatabases: {
  name: 'kc-adx-${d.clusterName}-${d.database}'
  scope: resourceGroup(d.resourceGroup)
  params: {
    clusterName: d.clusterName
    databaseName: d.database
    role: d.role
    clientId: identity.properties.clientId
  }
}]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${appName}'
  location: location
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      // No FUNCTIONS_WORKER_RUNTIME, WEBSITE_RUN_FROM_PACKAGE or WEBSITE_CONTENT* on Flex.
      appSettings: [
        { name: 'AzureWebJobsStorage__accountName', value: storage.name }
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'AzureWebJobsStorage__clientId', value: identity.properties.clientId }
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsights.properties.ConnectionString }
        { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identity.properties.clientId};Authorization=AAD' }
        { name: 'KC_IDENTITY_CLIENT_ID', value: identity.properties.clientId }
        { name: 'KC_CHECKPOINT_CONTAINER', value: checkpointContainerName }
        // Comma-separated; a request naming any other cluster or account is refused.
        { name: 'KC_ALLOWED_CLUSTERS', value: join(clusterUris, ',') }
        { name: 'KC_ALLOWED_STORAGE_ACCOUNTS', value: join(stagingAccountNames, ',') }
        { name: 'KC_REPLICATIONS', value: string(replications) }
        { name: 'KC_REPLICATIONS_VERSION', value: replicationsVersion }
        // Read by the host: functions/scheduler/function.json has "schedule": "%KC_SCHEDULE%".
        { name: 'KC_SCHEDULE', value: schedule }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${packageContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
  }
  dependsOn: [hostBlobOwner, hostQueueContributor, packageContainer, queues]
}

output appName string = app.name
output requestsQueueUrl string = '${storage.properties.primaryEndpoints.queue}kc-requests'
output storageAccountName string = storage.name
output identityClientId string = identity.properties.clientId
output identityPrincipalId string = identity.properties.principalId
output stagingAccounts array = stagingAccountNames
@description('Run each line in a KQL queryset of the database, as one of its admins (Fabric Eventhouse has no ARM resource for this).')
output fabricCommands array = [for f in fabricDatabases: '.add database [\'${f.database}\'] ${f.role} (\'aadapp=${identity.properties.clientId};${tenant().tenantId}\') \'kusto-copy\'']
