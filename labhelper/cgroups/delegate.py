"""``python -m labhelper.cgroups.delegate -- COMMAND``: give the lab its cgroup place, then become
COMMAND (cgroups.delegation says what that means). A module of its own, which the package never
imports, so that running it does not import it twice."""
from .delegation import main

if __name__ == "__main__":
    main()
