-- gateway moon of a net-to-net PSK setup, written the way strongSwan's sql scenarios write their
-- data.sql: identities as typed blobs, selectors as binary address ranges, PH_IP_* replaced by the test
INSERT INTO identities (type, data) VALUES ( /* moon.example.org (ID_FQDN) */
  2, X'6d6f6f6e2e6578616d706c652e6f7267'
);
INSERT INTO identities (type, data) VALUES ( /* sun.example.org */
  2, X'73756e2e6578616d706c652e6f7267'
);
INSERT INTO identities (type, data) VALUES ( /* %any */
  0, '%any'
);

INSERT INTO shared_secrets (type, data) VALUES ( /* "net2net-secret-0123456789" */
  1, X'6e6574326e65742d7365637265742d30313233343536373839'
);
INSERT INTO shared_secret_identity (shared_secret, identity) VALUES (1, 1);
INSERT INTO shared_secret_identity (shared_secret, identity) VALUES (1, 2);

INSERT INTO ike_configs (local, remote) VALUES ('PH_IP_MOON', 'PH_IP_SUN');
INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, auth_method, mobike) VALUES (
  'net-net', 1, 1, 2, 2, 0
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
