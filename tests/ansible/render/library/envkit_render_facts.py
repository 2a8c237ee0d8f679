#!/usr/bin/python
"""Test-only Ansible module: publish the given facts as the host's ansible_facts.

The render test (tests/ansible/test_role_render.py) uses it to stand a local
connection in for an Ubuntu 22.04/24.04 or Debian 12 GPU server: a module's
`ansible_facts` result is how `setup` itself publishes facts, so the roles see
ansible_facts.distribution, .kernel, ... exactly as on the real host.
"""

from __future__ import annotations

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(
        argument_spec={"facts": {"type": "dict", "required": True}}, supports_check_mode=True
    )
    # setup's own shape: `ansible_`-prefixed keys, which Ansible files under
    # ansible_facts.<name> (and injects as ansible_<name>).
    facts = {k if k.startswith("ansible_") else f"ansible_{k}": v for k, v in module.params["facts"].items()}
    module.exit_json(changed=False, ansible_facts=facts)


if __name__ == "__main__":
    main()
