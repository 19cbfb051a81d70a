-- gateway moon of a net-to-net setup with X.509 certificates: the CA and moon's certificate, moon's
-- private key, all bound to identities (DN, FQDN, subject key ids); CA_CERT_HEX, MOON_CERT_HEX,
-- MOON_KEY_HEX, CA_DN_HEX, MOON_SPK_HEX and PH_IP_* are filled in by the test
INSERT INTO identities (type, data) VALUES ( /* the CA's subject DN (ID_DER_ASN1_DN) */
  9, X'CA_DN_HEX'
);
INSERT INTO identities (type, data) VALUES ( /* moon.example.org */
  2, X'6d6f6f6e2e6578616d706c652e6f7267'
);
INSERT INTO identities (type, data) VALUES ( /* sun.example.org */
  2, X'73756e2e6578616d706c652e6f7267'
);
INSERT INTO identities (type, data) VALUES ( /* subject key id of moon's key (ID_KEY_ID) */
  11, X'MOON_SPK_HEX'
);

INSERT INTO certificates (type, keytype, data) VALUES ( /* the CA */
  1, 1, X'CA_CERT_HEX'
);
INSERT INTO certificates (type, keytype, data) VALUES ( /* moon.example.org */
  1, 1, X'MOON_CERT_HEX'
);
INSERT INTO certificate_identity (certificate, identity) VALUES (1, 1);
INSERT INTO certificate_identity (certificate, identity) VALUES (2, 2);
INSERT INTO certificate_identity (certificate, identity) VALUES (2, 4);

INSERT INTO private_keys (type, data) VALUES ( /* moon's RSA key, PKCS#1 DER */
  1, X'MOON_KEY_HEX'
);
INSERT INTO private_key_identity (private_key, identity) VALUES (1, 2);
INSERT INTO private_key_identity (private_key, identity) VALUES (1, 4);

INSERT INTO ike_configs (local, remote) VALUES ('PH_IP_MOON', 'PH_IP_SUN');
INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, mobike, dpd_delay) VALUES (
  'net-net', 1, 2, 3, 0, 0
);
INSERT INTO child_configs (name, updown) VALUES ('net-net', '/usr/lib/ipsec/_updown iptables');
INSERT INTO peer_config_child_config (peer_cfg, child_cfg) VALUES (1, 1);

INSERT INTO traffic_selectors (type, start_addr, end_addr) VALUES ( /* 10.1.0.0/16 */
  7, X'0a010000', X'0a01ffff'
);
INSERT INTO traffic_selectors (type, start_addr, end_addr) VALUES ( /* 10.2.0.0/16 */
  7, X'0a020000', X'0a02ffff'
);
INSERT INTO child_config_traffic_selector (child_cfg, traffic_selector, kind) VALUES (1, 1, 0);
INSERT INTO child_config_traffic_selector (child_cfg, traffic_selector, kind) VALUES (1, 2, 1);

INSERT INTO proposals (proposal) VALUES ('aes128-sha256-modp3072');
INSERT INTO proposals (proposal) VALUES ('aes256gcm16-prfsha256-x25519');
INSERT INTO ike_config_proposal (ike_cfg, prio, prop) VALUES (1, 1, 2);
INSERT INTO ike_config_proposal (ike_cfg, prio, prop) VALUES (1, 0, 1);
INSERT INTO proposals (proposal) VALUES ('aes256gcm16-modp3072');
INSERT INTO child_config_proposal (child_cfg, prio, prop) VALUES (1, 0, 3);
