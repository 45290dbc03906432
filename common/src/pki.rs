//! Certificate authority and certificates for collectors and stations.
