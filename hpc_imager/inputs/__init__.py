"""What the user gives: the cube.toml and site profile schemas, and the checks run before any worker starts."""
