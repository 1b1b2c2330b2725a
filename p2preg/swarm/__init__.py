"""The data-plane swarm: piece layout, download scheduler, upload policy, simulator."""
