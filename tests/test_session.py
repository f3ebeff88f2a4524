"""Leaving Ray clean: a placement group whose creating actor died is freed; a driver's own is left alone."""

import time

from raytt.session import actor_placement_groups, release_orphaned_placement_groups


def test_groups_of_dead_actors_are_released_and_a_drivers_own_are_not(ray_local):
    from ray.util.placement_group import placement_group, remove_placement_group

    @ray_local.remote(num_cpus=0)
    class Controller:
        """Stands in for a Ray Train controller: it creates its workers' placement group, then dies with its trial."""

        def reserve(self):
            group = placement_group([{"CPU": 1}])
            ray_local.get(group.ready())
            return group.id.hex()

    own = placement_group([{"CPU": 1}])
    ray_local.get(own.ready())
    controller = Controller.remote()
    ray_local.get(controller.reserve.remote())
    ray_local.kill(controller)
    assert len(actor_placement_groups()) == 1, "Ray keeps the dead controller's group while the job lives"
    while not release_orphaned_placement_groups():  # the GCS marks the creator dead soon after the kill
        assert actor_placement_groups(), "the group went away without being released"
        time.sleep(0.1)
    assert actor_placement_groups() == []
    assert own.id.hex() in {k for k, v in ray_local.util.placement_group_table().items() if v["state"] == "CREATED"}
    remove_placement_group(own)
