-- gateway moon for road warriors carol and dave, each with its own PSK, identified by IP address
-- (ID_IPV4_ADDR); the remote side's selector is dynamic (kind 3)
INSERT INTO identities (type, data) VALUES ( /* 192.168.0.1 */
  1, X'c0a80001'
);
INSERT INTO identities (type, data) VALUES ( /* 192.168.0.100 */
  1, X'c0a80064'
);
INSERT INTO identities (type, data) VALUES ( /* 192.168.0.200 */
  1, X'c0a800c8'
);
INSERT INTO identities (type, data) VALUES ( /* %any */
  0, '%any'
);

INSERT INTO shared_secrets (type, data) VALUES ( /* "carol-secret-8c1f" */
  1, X'6361726f6c2d7365637265742d38633166'
);
INSERT INTO shared_secrets (type, data) VALUES ( /* "dave-secret-33e0a" */
  1, X'646176652d7365637265742d3333653061'
);
INSERT INTO shared_secret_identity (shared_secret, identity) VALUES (1, 1);
INSERT INTO shared_secret_identity (shared_secret, identity) VALUES (1, 2);
INSERT INTO shared_secret_identity (shared_secret, identity) VALUES (2, 1);
INSERT INTO shared_secret_identity (shared_secret, identity) VALUES (2, 3);

INSERT INTO ike_configs (local, remote) VALUES ('PH_IP_MOON', '0.0.0.0');
INSERT INTO peer_configs (name, ike_cfg, local_id, remote_id, auth_method) VALUES ('rw', 1, 1, 4, 2);
INSERT INTO child_configs (name, updown) VALUES ('rw', '/usr/lib/ipsec/_updown iptables');
INSERT INTO peer_config_child_config (peer_cfg, child_cfg) VALUES (1, 1);

INSERT INTO traffic_selectors (type, start_addr, end_addr) VALUES ( /* 10.1.0.0/16 */
  7, X'0a010000', X'0a01ffff'
);
INSERT INTO traffic_selectors (type) VALUES ( /* dynamic/32 */
  7
);
INSERT INTO child_config_traffic_selector (child_cfg, traffic_selector, kind) VALUES (1, 1, 0);
INSERT INTO child_config_traffic_selector (child_cfg, traffic_selector, kind) VALUES (1, 2, 3);
