// The app's identity as a principal of one Azure Data Explorer database, in the cluster's
// resource group. Kusto takes the identity's client (application) id, with type App
// (learn.microsoft.com/azure/templates/microsoft.kusto/clusters/databases/principalassignments).

param clusterName string
param databaseName string
@allowed(['Admin', 'Ingestor', 'Monitor', 'UnrestrictedViewer', 'User', 'Viewer'])
param role string
param clientId string

resource cluster 'Microsoft.Kusto/clusters@2023-08-15' existing = {
  name: clusterName
}

resource database 'Microsoft.Kusto/clusters/databases@2023-08-15' existing = {
  parent: cluster
  name: databaseName
}

resource assignment 'Microsoft.Kusto/clusters/databases/principalAssignments@2023-08-15' = {
  parent: database
  name: 'kusto-copy-${uniqueString(clientId, role)}'
  properties: {
    principalId: clientId
    principalType: 'App'
    role: role
    tenantId: tenant().tenantId
  }
}
